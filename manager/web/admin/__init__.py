"""The admin console: the search page (the home page), object pages, the dashboard, jobs and events."""
