"""Facts defined once: every way to start a backup offers the same default compression, the server's own
(walcatalog.server_policy) before the installation's."""
from __future__ import annotations

from walcatalog.models import DEFAULT_COMPRESSION, BaseBackup


def test_backup_compression_default_is_the_same_everywhere(settings):
    from dashboard.forms import BackupForm
    from fleet.models import Server
    from walcatalog import server_policy
    from walcatalog.management.commands.backup import Command

    parser = Command().create_parser("manage.py", "backup")
    assert parser.get_default("compress") is None  # queue_backup asks server_policy
    assert BackupForm().fields["compression"].initial is server_policy.compression
    assert BaseBackup._meta.get_field("compression").default == DEFAULT_COMPRESSION == "zstd"
    assert server_policy.compression(Server(name="a")) == DEFAULT_COMPRESSION
    assert server_policy.compression(Server(name="b", compression="gzip")) == "gzip"
    settings.PITR_RETENTION_KEEP_BACKUPS, settings.PITR_RETENTION_DAYS = 3, 7.0
    assert server_policy.retention(Server(name="a")) == (3, 7.0)
    assert server_policy.retention(Server(name="b", retention_keep_backups=0, retention_days=1.5)) == (0, 1.5)
