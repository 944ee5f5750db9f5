"""Push providers: one module per service (APNs, FCM, AOSP), each behind `PushProvider`."""
