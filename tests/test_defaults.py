"""Facts defined once: every way to start a backup offers the same default compression."""
from __future__ import annotations

from walcatalog.models import DEFAULT_COMPRESSION, BaseBackup


def test_backup_compression_default_is_the_same_everywhere():
    from dashboard.forms import BackupForm
    from walcatalog.management.commands.backup import Command

    parser = Command().create_parser("manage.py", "backup")
    assert parser.get_default("compress") == DEFAULT_COMPRESSION == "zstd"
    assert BackupForm().fields["compression"].initial == DEFAULT_COMPRESSION
    assert BaseBackup._meta.get_field("compression").default == DEFAULT_COMPRESSION
