"""The write side: typed event records, the recording sink that turns notifications into
them, the writer and its batch appender, quarantine, the sessions ledger, and their SQL."""
