module godownstream

go 1.19
