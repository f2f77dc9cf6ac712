"""Versioned pydantic schemas of every topic payload (DESIGN.md "Topics")."""

from libs.common.schemas.base import Message, new_id, stable_id, utcnow
from libs.common.schemas.commands import RetrainModel
from libs.common.schemas.dead_letters import DeadLetter
from libs.common.schemas.models import DriftDetected, ModelChanged
from libs.common.schemas.outcomes import Outcome
from libs.common.schemas.predictions import ModelRef, PredictionMade, Variant
from libs.common.schemas.schema_events import SchemaDriftDetected
from libs.common.schemas.signals import FieldValue, Signal

__all__ = [
    "DeadLetter",
    "DriftDetected",
    "FieldValue",
    "Message",
    "ModelChanged",
    "ModelRef",
    "Outcome",
    "PredictionMade",
    "RetrainModel",
    "SchemaDriftDetected",
    "Signal",
    "Variant",
    "new_id",
    "stable_id",
    "utcnow",
]
