// An Express app: it reads the identity from req.headers, and prints the port
// the kernel gave it.
const express = require("express");
const app = express();
app.get("/whoami", (req, res) => res.json({ user_id: req.headers["x-line-user-id"] || null, raw: req.rawHeaders }));
const server = app.listen(0, "127.0.0.1", () => console.log(`LISTENING ${server.address().port}`));
