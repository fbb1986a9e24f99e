DROP TABLE audit_log;
DROP INDEX messages_created;
ALTER TABLE users DROP COLUMN tokens_valid_after;
DELETE FROM conversations WHERE kind = 'support';
ALTER TABLE conversations DROP CONSTRAINT conversations_support_check;
ALTER TABLE conversations DROP COLUMN support_user_id;
ALTER TABLE conversations DROP CONSTRAINT conversations_kind_check;
ALTER TABLE conversations
    ADD CONSTRAINT conversations_kind_check CHECK (kind IN ('direct', 'group', 'team'));
