"""The eomae application layer: the command line that chains the stages."""
