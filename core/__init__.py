"""Pure shared definitions: enums, errors, specs. Imports nothing from the rest of the project."""
