// The dashboard's card form: Stripe.js confirms the SetupIntent with the card (its
// number goes to Stripe only), then the form posts the payment method's id to us.
(function () {
  var form = document.getElementById('card-form');
  var status = document.getElementById('card-status');
  if (!form) { return; }
  if (typeof Stripe === 'undefined') {
    status.textContent = 'Stripe could not be loaded; reload the page to try again.';
    return;
  }
  var stripe = Stripe(form.getAttribute('data-publishable-key'));
  var card = stripe.elements().create('card');
  card.mount('#card-element');
  var confirmed = false;
  form.addEventListener('submit', function (event) {
    if (confirmed) { return; }
    event.preventDefault();
    if (!document.getElementById('consent').checked) {
      status.textContent = 'Tick the box to agree to be billed with this card.';
      return;
    }
    status.textContent = 'Checking the card with Stripe…';
    stripe.confirmCardSetup(form.getAttribute('data-client-secret'), { payment_method: { card: card } })
      .then(function (result) {
        if (result.error) {
          status.textContent = (result.error && result.error.message) || 'The card was not accepted.';
          return;
        }
        document.getElementById('payment_method_id').value = result.setupIntent.payment_method;
        confirmed = true;
        form.submit();
      });
  });
})();
