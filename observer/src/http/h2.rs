//! HTTP/2 (RFC 9113): frames of both directions, header blocks through HPACK, streams
//! paired into exchanges. (Implementation in progress.)
