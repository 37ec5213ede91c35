// HTTP/2 server for the HTTP/2 tests: node's http2 module, over TLS (node's own,
// statically linked OpenSSL; ALPN h2) or in cleartext (h2c, prior knowledge).
// Usage: node h2_server.js tls PORT CERT KEY | node h2_server.js plain PORT
//
// GET /node/items/N: 200 JSON; POST /node/upload: 201 with the body length;
// GET /node/private: 401 unless "authorization: Bearer good"; anything else: 404.
const http2 = require('http2');
const fs = require('fs');

const [mode, port] = [process.argv[2], Number(process.argv[3])];
let server;
if (mode === 'tls') {
  server = http2.createSecureServer({
    key: fs.readFileSync(process.argv[5]),
    cert: fs.readFileSync(process.argv[4]),
  });
} else if (mode === 'plain') {
  server = http2.createServer();
} else {
  console.error('usage: node h2_server.js tls PORT CERT KEY | plain PORT');
  process.exit(2);
}

server.on('stream', (stream, headers) => {
  const method = headers[':method'];
  const path = headers[':path'];
  let n = 0;
  stream.on('data', (c) => { n += c.length; });
  stream.on('end', () => {
    let status = 404;
    let body = 'not found\n';
    if (method === 'GET' && path.startsWith('/node/items/')) {
      status = 200;
      body = JSON.stringify({ id: path.slice('/node/items/'.length) }) + '\n';
    } else if (method === 'POST' && path === '/node/upload') {
      status = 201;
      body = `stored ${n}\n`;
    } else if (method === 'GET' && path === '/node/private') {
      const ok = headers.authorization === 'Bearer good';
      status = ok ? 200 : 401;
      body = ok ? 'secret\n' : 'unauthorized\n';
    }
    stream.respond({ ':status': status, 'content-type': 'text/plain' });
    stream.end(body);
  });
});
server.on('error', (e) => { console.error(e.message); process.exit(1); });
server.listen(port, '127.0.0.1', () => console.log('listening'));
