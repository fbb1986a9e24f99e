DROP TABLE contacts;
DROP TABLE chat_requests;
DROP TABLE messages;
DROP TABLE conversation_members;
DROP TABLE conversations;
