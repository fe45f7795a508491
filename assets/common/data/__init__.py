"""Storage and schema (no Dagster here): :mod:`.storage` (atomic, content-addressed files), :mod:`.schema` (the
conversation table and its column descriptions), :mod:`.user_files` (reading a user's file or naming it in the error),
:mod:`.rules` and :mod:`.taxonomy` (rejection by named rules, the task taxonomy), :mod:`.retention`, :mod:`.config`
and :mod:`.report` (config serializer, metadata tables). It imports nothing else of the shared leaf."""
