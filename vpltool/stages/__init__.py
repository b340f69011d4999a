"""The stages: one module or package per command, each reading and writing files; peers that never import each other."""
