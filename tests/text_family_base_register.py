"""The module the ``basetoy`` row names: importing it registers the base stand-in family."""

from text_family_base_stand_in import BaseToyFamily

from vpltool.models.text.family import register_text_family

FAMILY = register_text_family(BaseToyFamily())
