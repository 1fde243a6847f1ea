"""Surface inspection by patches (Kim, Noh and Park): a fine-tuned teacher, a shallow distilled student,
the patch protocol's evaluation and the analysis of what the networks learned."""

from edgelearn.inspection.distill import distill
from edgelearn.inspection.inspector import Inspection, Inspector, evaluate_inspection, is_defect_free, load_model
from edgelearn.inspection.student import Student, StudentConfig

__all__ = ["Inspection", "Inspector", "Student", "StudentConfig", "distill", "evaluate_inspection",
           "is_defect_free", "load_model"]
