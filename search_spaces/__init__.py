"""The shipped search spaces: the YAML files beside this file, installed as the package ``knnmix.search_spaces``
(so that ``knnmix sweep smoke`` works from an installed knnmix too). See README.md here for the schema."""
