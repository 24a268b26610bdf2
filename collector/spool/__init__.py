"""The disk spool's one segment format, written in one place: the segment files
(segments.py), one writer's open segment and the spool's size bound (writer.py), the
write-ahead log over it (wal.py) and the replay of closed segments (replay.py). The spool
sink (collector/sinks/spool.py) writes through the same writer; readers use
contract/segments.py."""
