"""Identity: users and groups (local or synced from Active Directory), login, roles, entitlements."""
