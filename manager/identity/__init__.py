"""Identity: users and groups (local or synced from Active Directory), login, roles, entitlements."""
from manager.jobs import register_task_module

register_task_module("manager.identity.sync_tasks")
