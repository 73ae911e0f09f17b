"""The gateway/activator: `/<namespace>/<deployment>/<path>` → a ready serving pod of that Kiln Deployment.

Its own process (`python -m kiln_operator.gateway`) and its own Deployment, so predictions never depend on the
operator being up. It only reads the API: a list+watch of serving pods and of Kiln Deployments keeps an
in-memory table (endpoints.py), so a prediction costs the API server nothing. Who may send a request is the API
server's answer (TokenReview, SubjectAccessReview on deployments/predict), asked once and remembered (auth.py).

    config.py     settings from the environment
    routing.py    path parsing and header rules (pure)
    auth.py       bearer tokens: TokenReview + SubjectAccessReview, cached by the token's sha256
    endpoints.py  the watch-fed table: which Deployments exist, which pod IPs are ready, round robin
    waiting.py    requests held for a ready pod, capped per Deployment
    apiserver.py  credentials and the HTTP session to the API server
    watch.py      list+watch loops (resourceVersion, bookmarks, re-list on 410, reconnect)
    wake.py       asks the operator for a replica of a Deployment scaled to zero
    server.py     the HTTP/1.1 server for prediction traffic (httptools; bounds, pipelining, disconnects)
    upstream.py   keep-alive HTTP/1.1 connections to the pods
    proxy.py      the request path
    metrics.py    Prometheus metrics (own registry)
    app.py        wiring, health endpoints, shutdown
"""
