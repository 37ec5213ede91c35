// HTTP/2 client for the HTTP/2 tests: node's http2 module, one session (one
// connection) for every request: GET /node/items/1..COUNT, POST /node/upload with 1000
// bytes, GET /node/private with "authorization: Bearer TOKEN", one after the other.
// Prints "STATUS PATH" per response. https:// URLs use TLS (ALPN h2, the server's
// certificate is not checked), http:// URLs h2c with prior knowledge.
// Usage: node h2_client.js URL COUNT TOKEN
const http2 = require('http2');

const [url, count, token] = [process.argv[2], Number(process.argv[3]), process.argv[4]];
const session = http2.connect(url, { rejectUnauthorized: false });
session.on('error', (e) => { console.error(e.message); process.exit(1); });

function request(headers, body) {
  return new Promise((resolve, reject) => {
    const req = session.request(headers, { endStream: body === undefined });
    let status = 0;
    req.on('response', (h) => { status = h[':status']; });
    req.on('data', () => {});
    req.on('end', () => resolve(status));
    req.on('error', reject);
    if (body !== undefined) req.end(body);
  });
}

(async () => {
  const calls = [];
  for (let i = 1; i <= count; i += 1) {
    calls.push([{ ':method': 'GET', ':path': `/node/items/${i}` }, undefined]);
  }
  calls.push([{ ':method': 'POST', ':path': '/node/upload', 'content-type': 'application/octet-stream' },
    Buffer.alloc(1000, 'x')]);
  calls.push([{ ':method': 'GET', ':path': '/node/private', authorization: `Bearer ${token}` }, undefined]);
  for (const [headers, body] of calls) {
    const status = await request(headers, body);
    console.log(`${status} ${headers[':path']}`);
  }
  session.close();
})().catch((e) => { console.error(e.message); process.exit(1); });
