"""Reading users' input files: bounded, strict, and explained when wrong.

``files`` refuses non-regular and oversized files, ``yaml_file`` reads YAML strictly (no
duplicate keys, no alias bombs), ``validation`` turns pydantic's errors into ``BadInputError``
messages naming the file, the field and the fix, and ``types`` holds the field types the YAML
formats share. ``json_schema`` writes the formats' JSON Schemas for editors.
"""
