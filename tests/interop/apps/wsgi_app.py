"""A Flask app as legacy backends are written: it reads the identity from the
WSGI environ, and builds absolute URLs behind an ingress with ProxyFix.
Run by gunicorn: `gunicorn -b 127.0.0.1:0 wsgi_app:app`."""

from flask import Flask, jsonify, redirect, request
from werkzeug.middleware.proxy_fix import ProxyFix

app = Flask(__name__)
# One trusted hop in front (the proxy, itself behind the ingress).
app.wsgi_app = ProxyFix(app.wsgi_app, x_for=1, x_proto=1, x_host=1, x_port=1)


@app.route("/whoami")
def whoami():
    environ = {k: v for k, v in request.environ.items() if k.startswith("HTTP_")}
    return jsonify(user_id=request.environ.get("HTTP_X_LINE_USER_ID"), environ=environ)


@app.route("/secure")
def secure():
    # The usual "force https" rule: behind a TLS-terminating ingress it only
    # works when the ingress's X-Forwarded-Proto reaches the app.
    if request.scheme != "https":
        return redirect(request.url.replace("http://", "https://", 1), code=302)
    return jsonify(scheme=request.scheme, host=request.host, url=request.url, remote_addr=request.remote_addr)
