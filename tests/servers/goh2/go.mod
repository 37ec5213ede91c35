module goh2

go 1.19
