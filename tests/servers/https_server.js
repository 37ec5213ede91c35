// HTTPS server for the TLS tests: node's own (statically linked) OpenSSL.
// Usage: node https_server.js PORT CERT KEY
const https = require('https');
const fs = require('fs');
const [port, cert, key] = [Number(process.argv[2]), process.argv[3], process.argv[4]];
const server = https.createServer(
  { key: fs.readFileSync(key), cert: fs.readFileSync(cert) },
  (req, res) => {
    let n = 0;
    req.on('data', (c) => { n += c.length; });
    req.on('end', () => {
      const body = `node ${req.method} ${req.url} ${n}\n`;
      res.writeHead(req.url.startsWith('/missing') ? 404 : 200, { 'Content-Length': Buffer.byteLength(body) });
      res.end(body);
    });
  },
);
server.keepAliveTimeout = 30000;
server.listen(port, '127.0.0.1', () => console.log('listening'));
