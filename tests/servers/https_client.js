// HTTPS client for the TLS tests: GET /node/N ... /node/1 on one keep-alive connection.
// Usage: node https_client.js PORT COUNT
const https = require('https');
const [port, count] = [Number(process.argv[2]), Number(process.argv[3])];
const agent = new https.Agent({ keepAlive: true, maxSockets: 1 });
let left = count;
function next() {
  const req = https.request(
    { host: '127.0.0.1', port, path: `/node/${left}`, rejectUnauthorized: false, agent },
    (res) => {
      res.resume();
      res.on('end', () => {
        left -= 1;
        if (left > 0) next();
        else { agent.destroy(); console.log('done'); }
      });
    },
  );
  req.on('error', (e) => { console.error(e.message); process.exit(1); });
  req.end();
}
next();
