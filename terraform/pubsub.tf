# Topics, the push subscriptions of cli/src/up.rs, and a dead-letter topic per subscription.
#
# Ack policy (DESIGN.md): 102/200/201/202/204 ack; anything else is redelivered with exponential
# backoff (retry_policy) until max_delivery_attempts, then the message goes to the subscription's
# dead-letter topic, where a pull subscription keeps it for inspection.

resource "google_pubsub_topic" "topic" {
  for_each = local.topics

  project = var.project_id
  name    = each.value.name
  labels  = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_topic" "dead_letter" {
  for_each = local.subscriptions

  project = var.project_id
  name    = "${local.topic_prefix}${each.key}-dead-letter"
  labels  = local.labels

  depends_on = [google_project_service.apis]
}

resource "google_pubsub_subscription" "push" {
  for_each = local.subscriptions

  project = var.project_id
  name    = "${var.name_prefix}-${each.key}"
  topic   = google_pubsub_topic.topic[each.value.topic].id
  labels  = local.labels

  ack_deadline_seconds       = each.value.ack_deadline_seconds
  message_retention_duration = "604800s"
  # Our own events carry ordering keys (one deployment's events in publish order).
  enable_message_ordering = local.topics[each.value.topic].ordered

  push_config {
    push_endpoint = "${local.service_urls[each.value.function]}${each.value.push_route}"

    oidc_token {
      service_account_email = google_service_account.push_invoker.email
      audience              = local.service_urls[each.value.function]
    }
  }

  retry_policy {
    minimum_backoff = var.push_min_backoff
    maximum_backoff = var.push_max_backoff
  }

  dead_letter_policy {
    dead_letter_topic     = google_pubsub_topic.dead_letter[each.key].id
    max_delivery_attempts = var.push_max_delivery_attempts
  }

  # Never expire for inactivity (the default deletes a subscription idle for 31 days).
  expiration_policy {
    ttl = ""
  }

  depends_on = [
    google_cloud_run_v2_service.function,
    google_cloud_run_v2_service_iam_member.push_invoker,
    google_service_account_iam_member.pubsub_mints_push_tokens,
  ]
}

# Dead letters are kept here (a topic without a subscription drops what it receives).
resource "google_pubsub_subscription" "dead_letter" {
  for_each = local.subscriptions

  project = var.project_id
  name    = "${var.name_prefix}-${each.key}-dead-letter"
  topic   = google_pubsub_topic.dead_letter[each.key].id
  labels  = local.labels

  message_retention_duration = var.dead_letter_retention
  ack_deadline_seconds       = 60

  expiration_policy {
    ttl = ""
  }
}

# Pub/Sub's service agent forwards undeliverable messages: it publishes to each dead-letter topic
# and acknowledges on the source subscription.
resource "google_pubsub_topic_iam_member" "dead_letter_publisher" {
  for_each = local.subscriptions

  project = var.project_id
  topic   = google_pubsub_topic.dead_letter[each.key].name
  role    = "roles/pubsub.publisher"
  member  = local.pubsub_service_agent
}

resource "google_pubsub_subscription_iam_member" "dead_letter_subscriber" {
  for_each = local.subscriptions

  project      = var.project_id
  subscription = google_pubsub_subscription.push[each.key].name
  role         = "roles/pubsub.subscriber"
  member       = local.pubsub_service_agent
}
