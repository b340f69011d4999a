"""The text-supervised families: models that learn from image–text pairs alone and segment by class names from
their checkpoint (:mod:`.pgseg`: PGSeg / GroupViT; :mod:`.talk2dino`: Talk2DINO), behind the one interface of
:mod:`.family` (``TextSegFamily``). Nothing is imported here: a family loads when it is first named."""
