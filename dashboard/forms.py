"""Forms for starting jobs; the planner, not the form, decides what is possible."""
from __future__ import annotations

from datetime import datetime

from django import forms
from django.utils import timezone

from chaos.params import ACTIONS, ChaosParams
from pitrsite.jobs import JobState
from restores.models import TargetKind
from restores.targets import RestoreTarget
from walcatalog import server_policy
from walcatalog.models import BaseBackup, Compression
from dashboard.timefmt import display_time, parse_moment


class BackupForm(forms.Form):
    # The current server's own compression, else DEFAULT_COMPRESSION (a callable: read when the form shows).
    compression = forms.ChoiceField(choices=Compression.choices, initial=server_policy.compression)


# What people call each kind of target (the model's values are what the command line takes).
TARGET_LABELS = {TargetKind.TIME: "time", TargetKind.LSN: "LSN", TargetKind.XID: "XID (transaction id)",
                 TargetKind.NAME: "restore point name", TargetKind.IMMEDIATE: "immediate (end of the backup)",
                 TargetKind.LATEST: "latest (all captured WAL)"}
TARGET_WORDS = {TargetKind.TIME: "a time", TargetKind.LSN: "an LSN", TargetKind.XID: "an XID",
                TargetKind.NAME: "a restore point", TargetKind.IMMEDIATE: "an immediate", TargetKind.LATEST: "a latest"}


class RestoreForm(forms.Form):
    kind = forms.ChoiceField(label="Target", choices=list(TARGET_LABELS.items()), initial=TargetKind.LATEST,
                             widget=forms.RadioSelect)
    value = forms.CharField(label="Value", required=False, max_length=200,
                            help_text="time with zone (2026-11-27 10:00:00 UTC), LSN (0/3000060), transaction id "
                                      "(XID) or restore point name; empty for an immediate or the latest target")
    picked = forms.DateTimeField(label="or pick a time", required=False, input_formats=["%Y-%m-%dT%H:%M:%S",
                                                                                        "%Y-%m-%dT%H:%M"],
                                 widget=forms.DateTimeInput(attrs={"type": "datetime-local", "step": "1"},
                                                            format="%Y-%m-%dT%H:%M:%S"),
                                 help_text="in the dashboard's time zone; used when Value is empty")
    exclusive = forms.BooleanField(required=False, help_text="stop just before the target (time, LSN, xid)")
    backup = forms.ModelChoiceField(label="Backup", required=False, empty_label="newest that fits (planner's choice)",
                                    queryset=BaseBackup.objects.none())
    timeline = forms.CharField(label="Timeline", required=False, max_length=16,
                               help_text="timeline number; empty for the newest timeline in the catalog")

    def __init__(self, *args, example: datetime | None = None, **kwargs):
        super().__init__(*args, **kwargs)
        self.fields["backup"].queryset = BaseBackup.objects.filter(  # type: ignore[attr-defined]  # ModelChoiceField
            state=JobState.DONE, manifest_verified=True)
        if example is not None:  # a moment inside the recoverable window, in the format the pages show
            self.fields["value"].help_text = self.fields["value"].help_text.replace(
                "2026-11-27 10:00:00 UTC", display_time(example))
            self.fields["picked"].widget.attrs["value"] = timezone.localtime(example).strftime("%Y-%m-%dT%H:%M:%S")

    def clean(self):
        data = super().clean()
        kind, value = data.get("kind"), (data.get("value") or "").strip()
        if kind == TargetKind.TIME and not value and data.get("picked"):
            value = data["picked"].isoformat()  # aware: Django made it so in the current time zone
        if kind == TargetKind.TIME and value:
            moment = parse_moment(value)
            if moment is not None:  # otherwise the planner says what is wrong with it (no zone, not a time)
                value = moment.isoformat()
        data["value"] = value
        if kind in (TargetKind.IMMEDIATE, TargetKind.LATEST):
            if value:
                self.add_error("value", f"{TARGET_WORDS[kind]} target takes no value")
            if data.get("exclusive"):
                self.add_error("exclusive",
                               f"exclusive applies to time, LSN and XID targets, not {TARGET_LABELS[kind]}")
        elif kind and not value:
            self.add_error("value", f"{TARGET_WORDS[kind]} target needs a value")
        if kind == TargetKind.NAME and data.get("exclusive"):
            self.add_error("exclusive", "exclusive applies to time, LSN and XID targets, not a restore point name")
        return data


class DashboardRestoreForm(RestoreForm):
    """The dashboard's restore form: also the disaster-recovery path (restore --as-new-primary), which must be
    confirmed, as it retires the server restored from (the view lets staff only post it)."""

    as_new_primary = forms.SlugField(label="As new primary", required=False, max_length=40,
                                     help_text="disaster recovery: the copy becomes a new server of this name "
                                               "(captured, backed up); empty for an ordinary restore")
    new_port = forms.IntegerField(label="New primary's port", required=False, min_value=1024, max_value=65535)
    new_restore_port = forms.IntegerField(label="Its restore target's port", required=False, min_value=1024,
                                          max_value=65535)
    confirm = forms.BooleanField(label="Confirm", required=False,
                                 help_text="with a new primary: I know the server restored from is retired "
                                           "(no capture or backups of it any more; its history stays restorable)")

    def clean(self):
        data = super().clean()
        if data.get("as_new_primary"):
            for field in ("new_port", "new_restore_port"):
                if not data.get(field):
                    self.add_error(field, "a new primary needs both ports")
            if not data.get("confirm"):
                self.add_error("confirm", "tick Confirm to make the copy the new primary and retire this server")
        return data

    def new_primary(self) -> dict | None:
        data = self.cleaned_data
        if not data.get("as_new_primary"):
            return None
        return {"name": data["as_new_primary"], "port": data["new_port"], "restore_port": data["new_restore_port"]}


def _span(pair: tuple[float, float]) -> str:
    return f"{pair[0]:g}-{pair[1]:g}"


CHAOS_DEFAULTS = ChaosParams()  # the one set of defaults: chaos.params


class ChaosForm(forms.Form):
    writers = forms.IntegerField(min_value=1, max_value=32, initial=CHAOS_DEFAULTS.writers)
    duration = forms.IntegerField(label="Duration (s)", min_value=5, max_value=86400,
                                  initial=int(CHAOS_DEFAULTS.duration))
    interval = forms.CharField(label="Interval (s)", initial=_span(CHAOS_DEFAULTS.interval), max_length=20,
                               help_text="MIN-MAX seconds between actions")
    restores = forms.IntegerField(min_value=1, max_value=500, initial=CHAOS_DEFAULTS.restores)
    actions = forms.CharField(required=False, max_length=300,
                              help_text=f"comma-separated from {', '.join(ACTIONS)}; empty for all, none for none")
    # Left empty, the parameters below take chaos.params' defaults.
    pause = forms.CharField(label="Pause (s)", required=False, initial=_span(CHAOS_DEFAULTS.pause), max_length=20,
                            help_text="MIN-MAX seconds a paused server stays paused")
    write_pause = forms.FloatField(label="Write pause (s)", required=False, min_value=0,
                                   initial=CHAOS_DEFAULTS.write_pause,
                                   help_text="mean seconds between one writer's commits")
    seed = forms.IntegerField(required=False, help_text="random seed, to repeat a run's choices")
    # Kept so that "Run again" repeats a run exactly; not meant to be typed.
    statement_timeout = forms.FloatField(required=False, initial=CHAOS_DEFAULTS.statement_timeout,
                                         widget=forms.HiddenInput)
    recovery_timeout = forms.FloatField(required=False, initial=CHAOS_DEFAULTS.recovery_timeout,
                                        widget=forms.HiddenInput)
    restore_offset = forms.FloatField(required=False, initial=CHAOS_DEFAULTS.restore_offset,
                                      widget=forms.HiddenInput)

    @staticmethod
    def initial_from(parameters: dict) -> dict:
        """A stored run's parameters (chaos.params.ChaosParams.as_dict) as this form's fields."""
        params = ChaosParams.from_dict(parameters)
        return {"writers": params.writers, "duration": int(params.duration), "interval": _span(params.interval),
                "restores": params.restores, "actions": ",".join(params.actions) or "none",
                "pause": _span(params.pause), "write_pause": params.write_pause, "seed": params.seed,
                "statement_timeout": params.statement_timeout, "recovery_timeout": params.recovery_timeout,
                "restore_offset": params.restore_offset}

    def params(self) -> dict:
        data = {k: v for k, v in self.cleaned_data.items() if v not in (None, "")}
        data["actions"] = [a.strip() for a in data.get("actions", "").split(",") if a.strip()]
        return data


def restore_target(data: dict) -> RestoreTarget:
    """The planner's RestoreTarget from a RestoreForm's cleaned data."""
    backup = data.get("backup")
    target = RestoreTarget(kind=data["kind"], value=data["value"], exclusive=data["exclusive"],
                           timeline=data["timeline"], backup_id=backup.pk if backup else None)
    target.validate()  # malformed values get the planner's own one-line message
    return target
