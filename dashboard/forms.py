"""Forms for starting jobs; the planner, not the form, decides what is possible."""
from __future__ import annotations

from django import forms

from pitrsite.jobs import JobState
from restores.models import TargetKind
from walcatalog.models import BaseBackup, Compression


class BackupForm(forms.Form):
    compression = forms.ChoiceField(choices=Compression.choices, initial=Compression.GZIP)


class RestoreForm(forms.Form):
    kind = forms.ChoiceField(label="Target", choices=TargetKind.choices, initial=TargetKind.LATEST,
                             widget=forms.RadioSelect)
    value = forms.CharField(label="Value", required=False, max_length=200,
                            help_text="time with zone (2026-11-27T10:00:00+00:00), LSN (0/3000060), xid or "
                                      "restore point name; empty for immediate and latest")
    exclusive = forms.BooleanField(required=False, help_text="stop just before the target (time, LSN, xid)")
    backup = forms.ModelChoiceField(label="Backup", required=False, empty_label="newest that fits (planner's choice)",
                                    queryset=BaseBackup.objects.none())
    timeline = forms.CharField(label="Timeline", required=False, max_length=16,
                               help_text="timeline number; empty for the newest timeline in the catalog")

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["backup"].queryset = BaseBackup.objects.filter(state=JobState.DONE, manifest_verified=True)

    def clean(self):
        data = super().clean()
        kind, value = data.get("kind"), (data.get("value") or "").strip()
        data["value"] = value
        if kind in (TargetKind.IMMEDIATE, TargetKind.LATEST):
            if value:
                self.add_error("value", f"a {kind} target takes no value")
            if data.get("exclusive"):
                self.add_error("exclusive", f"exclusive applies to time, LSN and xid targets, not {kind}")
        elif kind and not value:
            self.add_error("value", f"a {kind} target needs a value")
        if kind == TargetKind.NAME and data.get("exclusive"):
            self.add_error("exclusive", "exclusive applies to time, LSN and xid targets, not name")
        return data


class ChaosForm(forms.Form):
    writers = forms.IntegerField(min_value=1, max_value=32, initial=6)
    duration = forms.IntegerField(label="Duration (s)", min_value=5, max_value=86400, initial=300)
    interval = forms.CharField(label="Interval (s)", initial="30-60", max_length=20, help_text="MIN-MAX seconds between actions")
    restores = forms.IntegerField(min_value=1, max_value=100, initial=3)
    actions = forms.CharField(required=False, max_length=300,
                              help_text="comma-separated from capturer_restart, capturer_kill, primary_pause, "
                                        "standby_pause, indexer_kill; empty for all")

    @staticmethod
    def initial_from(parameters: dict) -> dict:
        """A stored run's parameters (chaos.params.ChaosParams.as_dict) as this form's fields."""
        interval = parameters.get("interval") or (30, 60)
        return {"writers": parameters.get("writers"), "duration": parameters.get("duration"),
                "interval": f"{interval[0]:g}-{interval[1]:g}" if isinstance(interval, (list, tuple)) else interval,
                "restores": parameters.get("restores"), "actions": ",".join(parameters.get("actions") or [])}

    def params(self) -> dict:
        data = self.cleaned_data
        return {"writers": data["writers"], "duration": data["duration"], "interval": data["interval"],
                "restores": data["restores"], "actions": [a.strip() for a in data["actions"].split(",") if a.strip()]}
