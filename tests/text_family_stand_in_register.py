"""The module the ``toytext`` row names: importing it registers the stand-in family (as a family's package does)."""

from text_family_stand_in import ToyTextFamily

from vpltool.models.text.family import register_text_family

FAMILY = register_text_family(ToyTextFamily())
