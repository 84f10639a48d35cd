"""Runtime tests (a package so module names cannot collide with other areas' tests)."""
