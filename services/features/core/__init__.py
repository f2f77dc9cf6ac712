"""Pure feature-update logic: grouping a batch per entity, computing vectors."""
