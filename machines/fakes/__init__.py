"""Fakes of the outside services the machines call: small real HTTP servers on 127.0.0.1.

`server` is the shared base; each other module is one service and sets ``FAKE`` to its class, so
``python -m machines.fakes NAME...`` can serve it by hand.
"""
