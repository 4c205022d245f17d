"""Forms for starting jobs; the planner, not the form, decides what is possible."""
from __future__ import annotations

from django import forms

from chaos.params import ACTIONS, ChaosParams
from pitrsite.jobs import JobState
from restores.models import TargetKind
from restores.targets import RestoreTarget
from walcatalog.models import DEFAULT_COMPRESSION, BaseBackup, Compression


class BackupForm(forms.Form):
    compression = forms.ChoiceField(choices=Compression.choices, initial=DEFAULT_COMPRESSION)


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
