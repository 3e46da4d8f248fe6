"""The database: where it is (target, embedded server), its schema and migrations, grants for
analysts, and the leadership connection singleton roles hold."""
