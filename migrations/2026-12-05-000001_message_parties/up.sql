-- Seed 002's DirectMessage names the sender's and the recipient's kind of user
-- (`user|astrologer|admin`) and the recipient. They are fixed when the message is written (from
-- the sender's roles and the conversation), so a later role change does not rewrite history.
ALTER TABLE messages ADD COLUMN sender_type TEXT;
ALTER TABLE messages ADD COLUMN recipient_id BIGINT;
ALTER TABLE messages ADD COLUMN recipient_type TEXT;
