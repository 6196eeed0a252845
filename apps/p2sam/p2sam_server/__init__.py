"""The P2SAM server around MONAI Label: what it serves, who may use it, how its jobs run.

* :mod:`.asgi` -- the web app ``serve.py`` runs: MONAI Label's FastAPI app with only the endpoints
  P2SAM needs, every name in a request checked, sign-in, and P2SAM's job endpoints.
* :mod:`.checks` -- the rules for request values (identifiers, uploads, parameters, handshake).
* :mod:`.auth` -- sign-in: a users file, or a Keycloak realm.
* :mod:`.datastore` -- MONAI Label's local datastore, confined to its folder.
* :mod:`.intake` -- from a request to a queued job; :mod:`.jobs` -- the queue and its workers;
  :mod:`.run` -- one job's computation.
"""
