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
