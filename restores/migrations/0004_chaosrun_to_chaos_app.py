"""ChaosRun moved to the chaos app: removed from restores' state only; its table restores_chaosrun stays."""
from django.db import migrations


class Migration(migrations.Migration):

    dependencies = [
        ('restores', '0003_restorejob_drill'),
    ]

    operations = [
        migrations.SeparateDatabaseAndState(
            state_operations=[migrations.DeleteModel(name='ChaosRun')],
            database_operations=[],
        ),
    ]
