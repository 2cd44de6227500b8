# The task store: one item per task, keyed by `id`. `updated_at` is a number (Unix epoch
# milliseconds) so `status-index` lists tasks in the order they last changed; `expires_at` (Unix
# epoch seconds) lets DynamoDB delete finished tasks. Encrypted at rest with the AWS-owned key
# (DynamoDB's default; a customer-managed key would also need kms permissions for the roles).

resource "aws_dynamodb_table" "tasks" {
  name         = module.naming.task_table_name
  billing_mode = "PAY_PER_REQUEST"
  hash_key     = "id"

  attribute {
    name = "id"
    type = "S"
  }

  attribute {
    name = "status"
    type = "S"
  }

  attribute {
    name = "agent_type"
    type = "S"
  }

  attribute {
    name = "updated_at"
    type = "N"
  }

  # The scheduler's queries: tasks by status, in the order they last changed (what is active,
  # what sat queued too long).
  global_secondary_index {
    name            = "status-index"
    hash_key        = "status"
    range_key       = "updated_at"
    projection_type = "ALL"
  }

  # Listings (`GET /tasks?status=`, `?agent_type=`, the status page, workflows), newest first
  # and paged by id (UUIDv7, creation order): a page reads only its own tasks.
  global_secondary_index {
    name            = "status-id-index"
    hash_key        = "status"
    range_key       = "id"
    projection_type = "ALL"
  }

  global_secondary_index {
    name            = "agent-type-index"
    hash_key        = "agent_type"
    range_key       = "id"
    projection_type = "ALL"
  }

  point_in_time_recovery {
    enabled = true
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  tags = local.tags
}
