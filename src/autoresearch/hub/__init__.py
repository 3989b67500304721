"""Distributed autoresearch: untrusted contributors, a trusted verification pool, a leaderboard.

    hub.store       storage behind one API: SQLite (WAL) by default, PostgreSQL with --db
    hub.repo        the hub's git: a bare repository, quarantined bundle intake, bundle exchange
    hub.service     the rules: intake, leases, quorum, the Welch-test decision, the chain
    hub.server      the FastAPI app (API keys hashed, roles on every endpoint) and the page
    hub.client      HTTP with backoff, for contributors, verifiers and `hub leaderboard`
    hub.verifier    `autoresearch verify`: re-runs claims in the sandbox with fresh seeds
    hub.contributor `autoresearch run --hub`: the loop's adapter (open, kept, sync)

No claim is trusted: credit and moves of the best come only from verification.
"""
