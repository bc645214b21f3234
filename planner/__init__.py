"""The planner: how many users a platform supports (View Planner's method, docs/planner.md).

A client of the manager: it drives desktops through the manager's REST API and reads their displays through the
broker's console tickets, so it imports nothing of `manager` (tests/unit/test_architecture.py); the manager imports
its pure parts (scoring, report) to store and serve results."""
