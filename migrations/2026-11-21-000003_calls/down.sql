DROP TABLE call_participants;
DROP TABLE calls;
