"""The adapters that turn a broker's messages, a table's changes, files or a clock into CloudEvents
(`base.Source`); `SOURCES` maps a trigger's kind to its adapter class."""
