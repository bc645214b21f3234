"""ALL ORM classes, on one Base (Alembic's env.py imports this package's metadata)."""
from manager.models.base import Base, utcnow
from manager.models.desktops import Desktop, Pool
from manager.models.leader import ManagerInstance, ManagerLeader
from manager.models.identity import (ApiToken, Assignment, BrowserConsole, DesktopSession, DirectorySyncState,
                                     Entitlement, Group, GroupGroupMembership, LoginAttempt, RoleAssignment, User,
                                     UserGroupMembership)
from manager.models.images import Snapshot, Template, TemplateVersion, Volume
from manager.models.infra import Cluster, Host, StorageDomain
from manager.models.ha import FenceAgent, HaRestart, HostHaState
from manager.models.ops import Alert, Bookmark, Event, Job, Tag, TagAssignment
from manager.models.notifications import NotificationOutbox, NotificationSubscription
from manager.models.policies import ClusterPolicy, PolicyBalloon, PolicyHostState
from manager.models.planner import PlannerRun, PlannerSample
from manager.models import search_indexes  # noqa: E402,F401  (the search's indexes join the metadata)

__all__ = [
    "Alert", "ApiToken", "Assignment", "Base", "Bookmark", "BrowserConsole", "Cluster", "ClusterPolicy", "Desktop", "DesktopSession",
    "DirectorySyncState", "Entitlement", "Event", "Group", "FenceAgent", "GroupGroupMembership", "HaRestart", "Host", "HostHaState", "Job", "LoginAttempt", "ManagerInstance", "ManagerLeader", "NotificationOutbox", "NotificationSubscription", "PlannerRun", "PlannerSample", "PolicyBalloon", "PolicyHostState", "Pool", "RoleAssignment",
    "Snapshot", "StorageDomain", "Tag", "TagAssignment", "Template", "TemplateVersion", "User",
    "UserGroupMembership", "Volume", "utcnow",
]
