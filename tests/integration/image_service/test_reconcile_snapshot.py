"""The image reconcile judges rows from ONE snapshot of the database (real Postgres).

The manager starts a reconcile pass in a background thread at start-up, while requests already create
templates. Under READ COMMITTED each statement saw a newer database: a template volume and its version,
committed together between the pass's 'which volumes do versions use' and 'which volumes are templates'
queries, looked unused, and the pass deleted the template's FILE (the broker's real-guest test then found
its demo template gone: "image file ... does not exist")."""
from __future__ import annotations

import pytest
from sqlalchemy import event, select

from image_manager import qemu_img, reconcile, service
from manager import db
from manager.models import Template, TemplateVersion, Volume


@pytest.mark.usefixtures("settings_env", "clean_db")
def test_a_template_committed_during_the_pass_is_not_taken_for_an_orphan(pg_engine, tmp_path):
    image = qemu_img.create(tmp_path / "tpl.qcow2", size=1 << 20)
    landed: list[str] = []

    def commit_a_template_meanwhile(_conn, _cursor, statement, _params, _context, _executemany) -> None:
        # right after the pass's first look at template versions: another transaction commits a template
        if landed or "template_versions" not in statement:
            return
        landed.append(statement)
        with db.session_scope() as other:
            volume = Volume(path=str(image), role=service.ROLE_TEMPLATE, virtual_size=1 << 20)
            template = Template(name="created-meanwhile")
            other.add_all([volume, template])
            other.flush()
            other.add(TemplateVersion(template_id=template.id, number=1, volume_id=volume.id))

    event.listen(pg_engine, "after_cursor_execute", commit_a_template_meanwhile)
    try:
        report = reconcile.reconcile(min_age_seconds=0.0)
    finally:
        event.remove(pg_engine, "after_cursor_execute", commit_a_template_meanwhile)

    assert landed, "the pass never looked at template versions: the race was not reproduced"
    assert str(image) not in report.removed_files and image.exists()
    with db.session_scope() as session:
        assert session.scalar(select(Volume.path).where(Volume.role == service.ROLE_TEMPLATE)) == str(image)
