"""schemathesis hooks for test_schemathesis.py (loaded by the schemathesis CLI through SCHEMATHESIS_HOOKS): path
ids are drawn from the objects that exist (listed by the test into the JSON file VDI_FUZZ_IDS_FILE) as well as
from what schemathesis generates, so the fuzz reaches real desktops, pools, templates... and not only 404s."""
from __future__ import annotations

import json
import os
from typing import Any

import schemathesis
from hypothesis import strategies as st

# a path parameter's name -> the list it takes its ids from (the CRUD path, as test_schemathesis lists them)
KIND_OF_PARAMETER = {"desktop_id": "desktops", "pool_id": "pools", "template_id": "templates", "host_id": "hosts",
                     "user_id": "users", "group_id": "groups", "tag_id": "tags", "bookmark_id": "bookmarks",
                     "job_id": "jobs", "event_id": "events", "domain_id": "storage-domains",
                     "version_id": "versions", "snapshot_id": "snapshots", "session_id": "sessions"}


def _ids() -> dict[str, list[str]]:
    with open(os.environ["VDI_FUZZ_IDS_FILE"]) as fh:
        return json.load(fh)


IDS = _ids()


def kind_of(name: str, path: str) -> str | None:
    """`item_id` belongs to the path's resource (/api/v1/<resource>/{item_id}); the others say their kind."""
    if name == "item_id":
        segments = path.split("/")
        return segments[segments.index("{item_id}") - 1]
    return KIND_OF_PARAMETER.get(name)


@schemathesis.hook
def flatmap_path_parameters(context: Any, path_parameters: dict[str, Any]) -> Any:
    choices = {}
    for name, generated in (path_parameters or {}).items():
        real = IDS.get(kind_of(name, context.operation.path) or "", [])
        if real:
            choices[name] = st.sampled_from([*real, generated])
    if not choices:
        return st.just(path_parameters)
    return st.fixed_dictionaries(choices).map(lambda chosen: {**path_parameters, **chosen})
