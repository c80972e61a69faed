"""Cloudflare automation: a DNS record, a Worker and its route, a certificate by DNS-01.

`api` is the client (the real API's endpoints, a configurable base URL); the fake it is tested
against is `machines.fakes.cloudflare`.
"""
