"""``mufleet load``: Locust runs against a fleet, and the report folder they leave.

The Locust side lives in the top-level ``loadtests/`` folder; this package holds what both
sides share (request records, LLM metrics, SLOs, load schedules) and what runs after Locust
(router scrape, analysis, plots, report).
"""
