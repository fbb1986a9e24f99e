ALTER TABLE messages DROP COLUMN recipient_type;
ALTER TABLE messages DROP COLUMN recipient_id;
ALTER TABLE messages DROP COLUMN sender_type;
