"""The statemachine benchmark: `make bench`, or ``python -m bench --help``.

One run, on one fresh database, measures a hand-written psycopg reference loop and statemachine on
the same workload (N workflows of 3 trivial transitions), then latency, behaviour at scale (a
million finished rows), worker memory, and the embedded SQLite backend. Results go to stdout as
Markdown and to ``bench/results/latest.json``; ``docs/performance.md`` explains every figure.

Modules: `config` (options), `workload` (the benchmark machine), `database` (creating, loading and
inspecting the bench database), `procs` (timing W worker processes), `reference` (the raw-SQL
loop), `engine` (timing statemachine workers), `runner` (the sections, with repeats and medians),
`latency`, `scale`, `memory`, `sqlcount`, `profile`, `report` (Markdown, JSON, validation),
`sysinfo` (the machine it ran on).
"""
